"""Interactive ipywidgets explorers for the book; each topic file imports ipywidgets inside."""
