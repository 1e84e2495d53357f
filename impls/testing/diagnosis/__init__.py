"""Diagnoses in plain words: what a failing input looks like, which known mistake explains a wrong
output or gradient, and which harmless convention a function follows."""
