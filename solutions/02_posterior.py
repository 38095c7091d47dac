def posterior_mean_variance(schedule, x0, x_t, t):
    """Mean and variance of q(x_{t-1} | x_t, x0) at one integer step t (code counts t from 0)."""
    beta, alpha, abar = schedule.betas[t], schedule.alphas[t], schedule.alpha_bars[t]
    abar_prev = schedule.alpha_bars[t - 1] if t > 0 else abar.new_tensor(1.0)  # empty product at t = 0
    mean = (abar_prev.sqrt() * beta / (1 - abar)) * x0 + (alpha.sqrt() * (1 - abar_prev) / (1 - abar)) * x_t
    variance = (1 - abar_prev) / (1 - abar) * beta
    return mean, variance
