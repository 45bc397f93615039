"""Int4 packing: two 4-bit codes per byte along K (low nibble = even k, high nibble = odd k)."""
import torch

from kernels._launch import check_2d, check_dtype


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Packs 4-bit codes into bytes along the last dimension.

    Args:
        q: uint8 [N, K] codes in 0..15; K must be even.

    Returns:
        uint8 [N, K // 2]; byte j holds code 2j in its low nibble and 2j + 1 in its high nibble.
    """
    check_2d("q", q)
    check_dtype("q", q, torch.uint8)
    k = q.shape[1]
    if k % 2:
        raise ValueError(f"K must be even to pack int4 codes two per byte, got K={k}")
    if q.numel() and int(q.max()) > 15:
        raise ValueError(f"q must hold 4-bit codes 0..15, got a maximum of {int(q.max())}")
    # read NK bytes ; write NK/2 bytes
    return q[:, 0::2] | (q[:, 1::2] << 4)


def unpack_int4(p: torch.Tensor, k: int) -> torch.Tensor:
    """Inverse of :func:`pack_int4`.

    Args:
        p: uint8 [N, K // 2] packed codes.
        k: K, the unpacked length; must be even and equal 2 * p.shape[1].

    Returns:
        uint8 [N, K] codes in 0..15.
    """
    check_2d("p", p)
    check_dtype("p", p, torch.uint8)
    if k % 2:
        raise ValueError(f"K must be even to unpack int4 codes two per byte, got K={k}")
    if p.shape[1] * 2 != k:
        raise ValueError(f"K={k} does not match packed width {p.shape[1]} (expected K = 2 * {p.shape[1]})")
    # read NK/2 bytes ; write NK bytes
    q = torch.empty(p.shape[0], k, dtype=torch.uint8, device=p.device)
    q[:, 0::2] = p & 0xF
    q[:, 1::2] = p >> 4
    return q
