"""Reading sweeps back from MLflow, scaling-law fits, the paper's figures, and the HTML report."""
