def guide(conditional, unconditional, w):
    """Classifier-free guidance: the conditional prediction pushed away from the unconditional one."""
    return (1 + w) * conditional - w * unconditional
