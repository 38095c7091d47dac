def resblock_parameters(c_in, c_out, time_dim):
    """Trainable numbers in helpers.unet.ResBlock(c_in, c_out, time_dim)."""
    norm1 = 2 * c_in                     # GroupNorm: a scale and an offset per channel
    conv1 = 9 * c_in * c_out + c_out     # 3x3 kernels plus a bias per output channel
    time = time_dim * c_out + c_out      # Linear: time embedding -> one offset per channel
    norm2 = 2 * c_out
    conv2 = 9 * c_out * c_out + c_out
    skip = c_in * c_out + c_out if c_in != c_out else 0  # 1x1 conv only when the widths differ
    return norm1 + conv1 + time + norm2 + conv2 + skip
