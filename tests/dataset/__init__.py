"""Tests of the data layer (dataset/ and the preprocessing scripts)."""
