def ddim_sigma(schedule, t, s, eta):
    """DDIM's noise scale for a step from t to an earlier s: eta times the posterior standard deviation."""
    abar_t, abar_s = schedule.alpha_bars[t], schedule.alpha_bars[s]
    return eta * ((1 - abar_s) / (1 - abar_t) * (1 - abar_t / abar_s)).sqrt()
