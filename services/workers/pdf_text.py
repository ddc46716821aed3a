"""Text of a PDF, read with pypdf in child processes: what citationExtraction parses when no
GROBID is set.

A PDF is someone else's file, and pypdf can spend seconds per page on a crafted one. So the
text is extracted by a small pool of long-lived child processes (one document at a time each,
started once, not per document): each document gets a CPU-time budget (the child's soft
RLIMIT_CPU is moved to "used so far + CPU_SECONDS" before it; past it the kernel ends the
child), the child's address space is capped, at most MAX_PAGES pages and MAX_TEXT_BYTES of
text are read, and a child that passes the wall-clock deadline, or whose document was
cancelled, is killed and replaced. A hostile document costs a bounded amount and is skipped
with its reason; it never stalls the operation.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import resource
import struct
import sys

MAX_PAGES = 100
MAX_TEXT_BYTES = 4 * 1024 * 1024
CPU_SECONDS = 20
MEMORY_BYTES = 1024 * 1024 * 1024
WALL_SECONDS = 30.0

_FRAME = struct.Struct(">BQ")  # status (0 text, 1 error), length


class UnreadablePdf(ValueError):
    pass


class _Child:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls) -> _Child:
        # The limits travel as arguments: the child is a fresh interpreter.
        return cls(
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "services.workers.pdf_text",
                str(CPU_SECONDS),
                str(MEMORY_BYTES),
                str(MAX_PAGES),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
        )

    async def extract(self, data: bytes) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(struct.pack(">Q", len(data)) + data)
        await self.proc.stdin.drain()
        status, length = _FRAME.unpack(await self.proc.stdout.readexactly(_FRAME.size))
        payload = (await self.proc.stdout.readexactly(length)).decode(errors="replace")
        if status != 0:
            raise UnreadablePdf(payload)
        return payload

    async def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        await self.proc.wait()


class PdfTextPool:
    """At most `size` child processes, each reading one document at a time."""

    def __init__(self, size: int = 2) -> None:
        self._slots = asyncio.Semaphore(size)
        self._idle: list[_Child] = []
        self.started = 0

    async def text(self, data: bytes) -> str:
        """Text of the document's pages in order; UnreadablePdf with the reason otherwise."""
        if not data.startswith(b"%PDF-"):
            raise UnreadablePdf("not a PDF (no %PDF- header)")
        async with self._slots:
            child = self._idle.pop() if self._idle else None
            if child is None:
                child = await _Child.start()
                self.started += 1
            healthy = False
            try:
                async with asyncio.timeout(WALL_SECONDS):
                    text = await child.extract(data)
                healthy = True
                return text
            except UnreadablePdf:
                healthy = True  # the child answered: it can take the next document
                raise
            except TimeoutError:
                raise UnreadablePdf(
                    f"text extraction took longer than {WALL_SECONDS:.0f} s"
                ) from None
            except (asyncio.IncompleteReadError, ConnectionError, BrokenPipeError):
                await child.proc.wait()
                code = child.proc.returncode
                raise UnreadablePdf(
                    f"text extraction ended by signal {-code} (CPU or memory limit)"
                    if code is not None and code < 0
                    else f"text extraction process ended (exit {code})"
                ) from None
            finally:
                if healthy:
                    self._idle.append(child)
                else:  # timed out, died, or cancelled mid-document: never reused
                    await asyncio.shield(child.kill())

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for child in idle:
            await child.kill()


def _extract(data: bytes, max_pages: int) -> str:
    from pypdf import PdfReader

    reader = PdfReader(io.BytesIO(data))
    texts, size = [], 0
    for page in reader.pages[:max_pages]:
        text = page.extract_text() or ""
        size += len(text)
        if size > MAX_TEXT_BYTES:
            break
        texts.append(text)
    return "\n".join(texts)


def _reply(out, status: int, payload: bytes) -> None:
    out.write(_FRAME.pack(status, len(payload)) + payload)
    out.flush()


def main(cpu_seconds: int, memory_bytes: int, max_pages: int) -> int:
    """The child: documents in (8-byte length, bytes), frames out, until stdin closes."""
    import logging

    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    # pypdf logs every oddity of a damaged PDF; the outcome is reported per eprint instead.
    logging.getLogger("pypdf").setLevel(logging.CRITICAL)
    source, out = sys.stdin.buffer, sys.stdout.buffer
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    while header := source.read(8):
        data = source.read(struct.unpack(">Q", header)[0])
        used = resource.getrusage(resource.RUSAGE_SELF)
        budget = int(used.ru_utime + used.ru_stime) + cpu_seconds
        if hard != resource.RLIM_INFINITY:
            budget = min(budget, hard)
        resource.setrlimit(resource.RLIMIT_CPU, (budget, hard))
        try:
            text = _extract(data, max_pages)
        except MemoryError:
            _reply(out, 1, b"text extraction hit the memory limit")
            continue
        except Exception as exc:  # pypdf raises many types for damaged files
            reason = f"{type(exc).__name__}: {exc}"[:300].replace("\n", " ")
            _reply(out, 1, reason.encode())
            continue
        _reply(out, 0, text.encode(errors="replace"))
    return 0


if __name__ == "__main__":
    sys.exit(main(*(int(a) for a in sys.argv[1:4])))
