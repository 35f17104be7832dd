"""Streamlit pages. They stay thin: they read `state`, call services and render."""
