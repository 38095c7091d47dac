def v_target(schedule, x0, t, eps):
    """v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0, one timestep per image."""
    abar = schedule.alpha_bars[t].float().view(-1, 1, 1, 1)
    return abar.sqrt() * eps - (1 - abar).sqrt() * x0
