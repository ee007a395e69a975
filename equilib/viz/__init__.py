"""Pure functions that compute what the book's figures and widgets show (no plotting here)."""
