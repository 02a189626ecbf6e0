"""Tests of stage 2 (diffusion/)."""
