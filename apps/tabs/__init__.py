"""The app's tabs, one file each: its form (a dataclass), its layout, its handlers and its outputs."""
