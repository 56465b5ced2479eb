"""Lightning callbacks: result writing (domain generalization, TTA and attention export plug in here)."""
