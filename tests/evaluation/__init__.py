"""Tests of the evaluation package (metrics, FIDs, LPIPS, Dice protocol, privacy audit, CLIs)."""
