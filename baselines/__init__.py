"""The baselines DetCon, Odin and VITO are measured against: SimCLR, BYOL and MoCLR."""
