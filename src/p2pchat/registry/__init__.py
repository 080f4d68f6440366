"""The registry (tracker): accounts, presence, rooms. It never carries chat text."""
