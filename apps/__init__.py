"""apps package of Erasure Studio; see DESIGN.md."""
