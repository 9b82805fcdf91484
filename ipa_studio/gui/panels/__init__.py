"""The window's panels. Each one reads and writes the view state; none talks to another."""
