def ddpm_step_posterior(schedule, x_t, t, eps_hat, z):
    """x_(t-1) = mu_theta(x_t, t) + sqrt(beta-tilde_t) z, with no noise at the last step (t = 0)."""
    beta, alpha, abar = schedule.betas[t], schedule.alphas[t], schedule.alpha_bars[t]
    mean = (x_t - beta / (1 - abar).sqrt() * eps_hat) / alpha.sqrt()
    if t == 0:
        return mean
    abar_prev = schedule.alpha_bars[t - 1]
    beta_tilde = (1 - abar_prev) / (1 - abar) * beta
    return mean + beta_tilde.sqrt() * z
