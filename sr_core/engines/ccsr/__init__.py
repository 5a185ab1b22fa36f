"""CCSR (Sun et al., content consistent super-resolution): schedules and samplers of its v1 and v2 models."""
