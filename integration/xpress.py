"""Xpress Huffman (MS-XCA "LZ77+Huffman") and WinRM's chunk framing of compressed rsp:Streams, for the tests.

Written from the format alone, so that it checks the relay's decoder instead of sharing its mistakes:

* a stream is a sequence of chunks: u16le (original size - 1), u16le (compressed size - 1), then the compressed
  bytes; at most 65,536 original bytes per chunk; when the two sizes are equal the bytes are stored raw;
* a compressed chunk is one LZ77+Huffman block: 256 bytes of 4-bit code lengths (512 symbols, even symbol in
  the low nibble), then a bit stream read as little-endian 16-bit words, most significant bit first. Symbols
  0-255 are literals; 256 + (length header | log2(distance) << 4) is a match, whose length is 3 + the header, or
  3 + 15 + the next byte when the header is 15, or 3 + the next u16 when that byte is 255; the distance's low bits
  follow the symbol. Bytes read for lengths come from the byte stream at the reader's position, between words.

`compress` finds matches greedily with one candidate per 3-byte prefix: a valid stream, not a good one.

A block ends with the EOF symbol and the word it ends in, then the word the reader has loaded ahead (MS-XCA's
examples end exactly so). Its reader runs until the output is complete: when the last symbols and EOF all sit
in the last word of bits, the reader's byte cursor is at the end of the input before it decodes them. A reader
that stops there instead (as if the input had run out) loses them; `tight_end` tells such blocks apart. By
default `compress` adds two zero bytes after such a block (ignored by a reader that goes by the output size);
`compress(data, tight=True)` makes every compressed chunk end that way on purpose, to test a reader.
"""

from __future__ import annotations

import heapq
import struct
import typing

CHUNK = 65536
MAX_CODE_BITS = 15
EOF_SYMBOL = 256


class XpressError(ValueError):
    """A stream that is not valid Xpress Huffman or not valid chunk framing; the message says where."""


# ---------------------------------------------------------------------------
# Huffman codes


def code_lengths(freqs: typing.Sequence[int], limit: int = MAX_CODE_BITS) -> typing.List[int]:
    """Huffman code lengths, none over `limit`, for the symbols of nonzero frequency (at least two)."""
    weights = list(freqs)
    while True:
        heap = [(w, sym, [sym]) for sym, w in enumerate(weights) if w > 0]
        lengths = [0] * len(weights)
        if len(heap) < 2:
            raise ValueError("a Huffman code needs two symbols at least")
        heapq.heapify(heap)
        while len(heap) > 1:
            w1, t1, s1 = heapq.heappop(heap)
            w2, t2, s2 = heapq.heappop(heap)
            for sym in s1 + s2:
                lengths[sym] += 1
            heapq.heappush(heap, (w1 + w2, min(t1, t2), s1 + s2))
        if max(lengths) <= limit:
            return lengths
        # Too deep: flatten the distribution and build again.
        weights = [(w + 1) // 2 if w else 0 for w in weights]


def canonical_codes(lengths: typing.Sequence[int]) -> typing.List[int]:
    """Codes in canonical order: by length, then by symbol, counting up."""
    codes = [0] * len(lengths)
    code, prev = 0, 0
    for length, sym in sorted((n, s) for s, n in enumerate(lengths) if n):
        code <<= length - prev
        codes[sym] = code
        code += 1
        prev = length
    return codes


def decoding_table(lengths: typing.Sequence[int]) -> typing.List[int]:
    """For each 15-bit prefix, the symbol whose code starts it (-1: none)."""
    table = [-1] * (1 << MAX_CODE_BITS)
    code, prev = 0, 0
    for length, sym in sorted((n, s) for s, n in enumerate(lengths) if n):
        code <<= length - prev
        prev = length
        if code >= (1 << length):
            raise XpressError("the code lengths over-subscribe the code space (symbol %d, %d bits)" % (sym, length))
        lo = code << (MAX_CODE_BITS - length)
        hi = (code + 1) << (MAX_CODE_BITS - length)
        table[lo:hi] = [sym] * (hi - lo)
        code += 1
    return table


# ---------------------------------------------------------------------------
# One block (at most 65,536 original bytes: what a WinRM chunk holds)


def _tokens(data: bytes, literal_tail: int = 0) -> typing.List[typing.Union[int, typing.Tuple[int, int]]]:
    """Literals (ints) and matches (length, distance), greedy, one candidate per 3-byte prefix; the last
    `literal_tail` bytes are literals (another valid parse: how `tight=True` moves where the bits end)."""
    out: typing.List[typing.Union[int, typing.Tuple[int, int]]] = []
    last: typing.Dict[bytes, int] = {}
    i, n = 0, len(data)
    while i < n:
        length = 0
        j = -1
        if i + 3 <= n - literal_tail:
            key = data[i:i + 3]
            j = last.get(key, -1)
            last[key] = i
            if j >= 0 and i - j < CHUNK:
                length = 3
                limit = n - literal_tail - i
                # Compare in slices first: long runs (zeros, repeated lines) would be slow byte by byte.
                while length + 64 <= limit and data[j + length:j + length + 64] == data[i + length:i + length + 64]:
                    length += 64
                while length < limit and data[j + length] == data[i + length]:
                    length += 1
        if length >= 3:
            out.append((length, i - j))
            for k in range(i + 1, min(i + length, n - 2)):
                last[data[k:k + 3]] = k
            i += length
        else:
            out.append(data[i])
            i += 1
    return out


def _match_symbol(length: int, distance: int) -> int:
    return 256 + min(length - 3, 15) + 16 * (distance.bit_length() - 1)


class _BitWriter:
    """The writer's side of the reader's look-ahead: the reader holds two words ahead, so a word's slot is
    reserved two words early and bytes written meanwhile (long match lengths) land after the reserved slots."""

    def __init__(self, out: bytearray) -> None:
        self.out = out
        self.slots = [len(out), len(out) + 2]
        out += b"\0\0\0\0"
        self.acc = 0
        self.free = 16

    def bits(self, count: int, value: int) -> None:
        if count == 0:
            return
        if count <= self.free:
            self.acc = (self.acc << count) | value
            self.free -= count
            return
        over = count - self.free
        word = ((self.acc << self.free) | (value >> over)) & 0xFFFF
        struct.pack_into("<H", self.out, self.slots[0], word)
        self.slots = [self.slots[1], len(self.out)]
        self.out += b"\0\0"
        self.acc = value & ((1 << over) - 1)
        self.free = 16 - over

    def byte(self, value: int) -> None:
        self.out.append(value)

    def u16(self, value: int) -> None:
        self.out += struct.pack("<H", value)

    def finish(self) -> bytes:
        struct.pack_into("<H", self.out, self.slots[0], (self.acc << self.free) & 0xFFFF)
        return bytes(self.out)


def compress_block(data: bytes, literal_tail: int = 0, eof_weight: int = 1) -> bytes:
    """One LZ77+Huffman block of `data` (at most 65,536 bytes), ending with the EOF symbol. `eof_weight` counts
    EOF that many times when the code lengths are chosen (a shorter EOF code: still a valid code)."""
    if not data or len(data) > CHUNK:
        raise ValueError("a block holds 1 to %d bytes, not %d" % (CHUNK, len(data)))
    tokens = _tokens(data, literal_tail)
    freqs = [0] * 512
    for t in tokens:
        freqs[t if isinstance(t, int) else _match_symbol(*t)] += 1
    freqs[EOF_SYMBOL] += eof_weight
    lengths = code_lengths(freqs)
    codes = canonical_codes(lengths)
    out = bytearray(lengths[2 * i] | (lengths[2 * i + 1] << 4) for i in range(256))
    w = _BitWriter(out)
    for t in tokens:
        if isinstance(t, int):
            w.bits(lengths[t], codes[t])
            continue
        length, distance = t
        sym = _match_symbol(length, distance)
        w.bits(lengths[sym], codes[sym])
        if length - 3 >= 15:
            if length - 3 - 15 < 255:
                w.byte(length - 3 - 15)
            else:
                w.byte(255)
                w.u16(length - 3)
        high = distance.bit_length() - 1
        w.bits(high, distance - (1 << high))
    w.bits(lengths[EOF_SYMBOL], codes[EOF_SYMBOL])
    return w.finish()


def tight_end(src: bytes, size: int) -> bool:
    """Whether the reader's byte cursor reaches the end of the block `src` before its `size` bytes are decoded."""
    return _decode(src, size)[1] < size


def decompress_block(src: bytes, size: int) -> bytes:
    """`size` bytes (at most 65,536: one block) out of the LZ77+Huffman block `src`."""
    return _decode(src, size)[0]


def _decode(src: bytes, size: int) -> typing.Tuple[bytes, int]:
    """The block's `size` bytes, and how many of them were decoded when the byte cursor reached the end."""
    if not 0 < size <= CHUNK:
        raise XpressError("a block decodes to 1 to %d bytes, not %d" % (CHUNK, size))
    if len(src) < 260:
        raise XpressError("%d bytes: shorter than the 256-byte code table and the first two words" % len(src))
    lengths = []
    for b in src[:256]:
        lengths += [b & 15, b >> 4]
    table = decoding_table(lengths)

    def word(at: int) -> int:
        if at + 2 > len(src):
            raise XpressError("bit stream runs past the end of the %d-byte block (word at %d)" % (len(src), at))
        return src[at] | (src[at + 1] << 8)

    pos = 256
    bits = (word(pos) << 16) | word(pos + 2)
    pos += 4
    extra = 16
    out = bytearray()

    def consume(count: int) -> None:
        nonlocal bits, extra, pos
        bits = (bits << count) & 0xFFFFFFFF
        extra -= count
        if extra < 0:
            bits |= word(pos) << (-extra)
            pos += 2
            extra += 16

    at_input_end = -1
    while len(out) < size:
        if at_input_end < 0 and pos >= len(src):
            at_input_end = len(out)
        sym = table[bits >> (32 - MAX_CODE_BITS)]
        if sym < 0:
            raise XpressError("no code matches the bits at byte %d (output %d)" % (pos, len(out)))
        consume(lengths[sym])
        if sym < 256:
            out.append(sym)
            continue
        header, offset_bits = (sym - 256) & 15, (sym - 256) >> 4
        length = header
        if header == 15:
            if pos >= len(src):
                raise XpressError("match length byte past the end of the block")
            length = src[pos]
            pos += 1
            if length == 255:
                length = word(pos)
                pos += 2
                if length == 0:
                    if pos + 4 > len(src):
                        raise XpressError("32-bit match length past the end of the block")
                    length = struct.unpack_from("<I", src, pos)[0]
                    pos += 4
                if length < 15:
                    raise XpressError("extended match length %d is under 15" % length)
                length -= 15
            length += 15
        length += 3
        distance = ((bits >> (32 - offset_bits)) if offset_bits else 0) + (1 << offset_bits)
        consume(offset_bits)
        if distance > len(out):
            raise XpressError("match distance %d reaches before the start (output %d)" % (distance, len(out)))
        if len(out) + length > size:
            raise XpressError("match of %d bytes runs past the %d-byte chunk" % (length, size))
        start = len(out) - distance
        for k in range(length):
            out.append(out[start + k])
    return bytes(out), size if at_input_end < 0 else at_input_end


# ---------------------------------------------------------------------------
# WinRM's framing of a compressed rsp:Stream


def _tight_block(chunk: bytes) -> bytes:
    """A block of `chunk` whose last symbols share the final word with EOF: other parses of its tail and shorter EOF
    codes, until one ends so."""
    for eof_weight in (1, len(chunk) // 64 + 1, len(chunk) // 8 + 1, len(chunk) + 1):
        for literal_tail in range(0, 24):
            packed = compress_block(chunk, literal_tail, eof_weight)
            if tight_end(packed, len(chunk)):
                return packed
    raise ValueError("no parse of this %d-byte chunk ends in its last word" % len(chunk))


def compress(data: bytes, tight: bool = False) -> bytes:
    """`data` as WinRM frames a compressed stream: chunks of at most 65,536 bytes, raw when that is no larger.
    Blocks that end tight get two zero bytes of slack, unless `tight`: then every compressed block ends tight."""
    out = bytearray()
    for at in range(0, len(data), CHUNK):
        chunk = data[at:at + CHUNK]
        if tight:
            packed = _tight_block(chunk)
        else:
            packed = compress_block(chunk)
            if tight_end(packed, len(chunk)):
                packed += b"\0\0"
        if len(packed) >= len(chunk):
            packed = chunk
        out += struct.pack("<HH", len(chunk) - 1, len(packed) - 1) + packed
    return bytes(out)


def decompress(data: bytes) -> bytes:
    """The original bytes of a framed stream; XpressError says what is wrong with a bad one."""
    out = bytearray()
    at = 0
    while at < len(data):
        if at + 4 > len(data):
            raise XpressError("chunk header at byte %d cut short (%d bytes left)" % (at, len(data) - at))
        original, packed = (n + 1 for n in struct.unpack_from("<HH", data, at))
        at += 4
        if at + packed > len(data):
            raise XpressError("chunk at byte %d says %d compressed bytes, %d are left" % (at - 4, packed, len(data) - at))
        body = data[at:at + packed]
        at += packed
        if packed == original:
            out += body
        elif packed > original:
            raise XpressError("chunk at byte %d: %d compressed bytes for %d original" % (at - packed - 4, packed, original))
        else:
            out += decompress_block(body, original)
    return bytes(out)
