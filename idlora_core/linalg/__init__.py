"""Linear algebra of ID-LoRA, without torch: decompositions, randomized variants, clustering,
skeleton selection and input validation."""
