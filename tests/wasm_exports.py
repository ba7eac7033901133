"""The export section of a WebAssembly module: a tiny reader of the binary format (magic,
version, then sections of id + LEB128 size; section 7 lists exports as name + kind + index)."""
from pathlib import Path

KINDS = {0: "func", 1: "table", 2: "memory", 3: "global"}


def _uleb(b: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = b[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, i


def exports(path: Path) -> dict[str, str]:
    """Export name -> kind."""
    b = path.read_bytes()
    if b[:4] != b"\0asm":
        raise ValueError(f"{path} is not a wasm module")
    out, i = {}, 8
    while i < len(b):
        section = b[i]
        size, i = _uleb(b, i + 1)
        end = i + size
        if section == 7:
            count, i = _uleb(b, i)
            for _ in range(count):
                n, i = _uleb(b, i)
                name = b[i:i + n].decode()
                kind = KINDS.get(b[i + n], "?")
                _, i = _uleb(b, i + n + 1)
                out[name] = kind
        i = end
    return out
