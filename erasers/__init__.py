"""erasers package of Erasure Studio; see DESIGN.md."""
