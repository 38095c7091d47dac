def ema_update(ema_params, params, decay):
    """theta_ema <- decay * theta_ema + (1 - decay) * theta, in place, tensor by tensor."""
    for ema_p, p in zip(ema_params, params):
        ema_p.mul_(decay).add_(p, alpha=1 - decay)
