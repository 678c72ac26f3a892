"""Attacks on the block-wise cipher (jigsaw solver, learned inverse, leaked statistics) and their report."""
