"""Text of a PDF, read with pypdf in a subprocess of its own: what citationExtraction parses
when no GROBID is set.

A PDF is someone else's file, and pypdf can spend seconds per page on a crafted one. The child
process runs under a CPU-time and an address-space limit, reads at most MAX_PAGES pages and
returns at most MAX_TEXT_BYTES of text, and is killed past a wall-clock deadline or when the
operation is cancelled: a hostile document costs a bounded amount and is skipped with its
reason, never stalls the operation.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import resource
import sys

MAX_PAGES = 100
MAX_TEXT_BYTES = 4 * 1024 * 1024
CPU_SECONDS = 20
MEMORY_BYTES = 1024 * 1024 * 1024
WALL_SECONDS = 30.0


class UnreadablePdf(ValueError):
    pass


async def pdf_text(data: bytes) -> str:
    """Text of the document's pages in order; UnreadablePdf with the reason otherwise."""
    if not data.startswith(b"%PDF-"):
        raise UnreadablePdf("not a PDF (no %PDF- header)")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.workers.pdf_text",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(WALL_SECONDS):
            out, err = await proc.communicate(data)
    except TimeoutError:
        raise UnreadablePdf(f"text extraction took longer than {WALL_SECONDS:.0f} s") from None
    finally:
        if proc.returncode is None:  # deadline passed, or the operation was cancelled
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    if proc.returncode != 0:
        reason = err.decode(errors="replace").strip().splitlines()[-1:] or [
            f"text extraction ended by signal {-proc.returncode} (CPU or memory limit)"
            if proc.returncode < 0
            else f"text extraction failed (exit {proc.returncode})"
        ]
        raise UnreadablePdf(reason[0][:300])
    return out.decode(errors="replace")


def _extract(data: bytes) -> str:
    from pypdf import PdfReader

    reader = PdfReader(io.BytesIO(data))
    texts, size = [], 0
    for page in reader.pages[:MAX_PAGES]:
        text = page.extract_text() or ""
        size += len(text)
        if size > MAX_TEXT_BYTES:
            break
        texts.append(text)
    return "\n".join(texts)


def main() -> int:
    """The child: limits first, then one document from stdin, its text to stdout."""
    resource.setrlimit(resource.RLIMIT_CPU, (CPU_SECONDS, CPU_SECONDS))
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_BYTES, MEMORY_BYTES))
    import logging

    # pypdf logs every oddity of a damaged PDF; the outcome is reported per eprint instead.
    logging.getLogger("pypdf").setLevel(logging.CRITICAL)
    data = sys.stdin.buffer.read()
    try:
        text = _extract(data)
    except MemoryError:
        print("text extraction hit the memory limit", file=sys.stderr)
        return 1
    except Exception as exc:  # pypdf raises many types for damaged files
        print(f"{type(exc).__name__}: {exc}"[:300].replace("\n", " "), file=sys.stderr)
        return 1
    sys.stdout.buffer.write(text.encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
