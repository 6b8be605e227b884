"""The stage contract (contract.py) and one folder per stage: its class and its algorithm."""
