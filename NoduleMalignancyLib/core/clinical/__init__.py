"""The clinical rules: Lung-RADS (category, follow-up, table), the Brock model and its inputs, the exam."""
