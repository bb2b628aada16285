"""Small helpers shared by every layer (no model or training code here)."""
