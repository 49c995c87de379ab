"""Fault tests: a job or a crash pushes a limit; assert nothing unbounded, lost or left behind."""
