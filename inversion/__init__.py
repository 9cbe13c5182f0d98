"""inversion package of Erasure Studio; see DESIGN.md."""
