def q_sample_by_hand(schedule, x0, t, eps):
    """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, one timestep per image."""
    abar = schedule.alpha_bars[t].float().view(-1, 1, 1, 1)  # (N,) -> (N, 1, 1, 1) to broadcast
    return abar.sqrt() * x0 + (1 - abar).sqrt() * eps
