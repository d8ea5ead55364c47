"""Fitting the taus (Algorithm 1, Eq. 3-5 and 8) and the candidate schedules."""
