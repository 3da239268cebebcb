"""Retuning from measured traces (pure): the calibration schedule (schedule.py), candidates and
decisions (retuner.py). Import the modules themselves: this file imports nothing."""
