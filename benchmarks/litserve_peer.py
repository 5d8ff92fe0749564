"""The serving benchmark's peer: four single-task models (the backbone fine-tuned per task: classification and token
classification heads on all-MiniLM-L6-v2) behind LitServe, one endpoint per task, LitServe's batching on.

    python -m benchmarks.litserve_peer --models DIR --port 8001 [--max-batch-size 64] [--batch-timeout 0.005] [--threads 1]

DIR holds one Hugging Face model folder per task (``<task>/``, with ``kind.txt``: classification or tagging), as
``benchmarks.serve`` writes them; each endpoint is ``POST /<task>`` with ``{"text": ...}``.
"""

# no `from __future__ import annotations`: LitServe reads decode_request's annotation to build the endpoint, and a
# string annotation makes FastAPI expect the body as a query parameter (every request a 422)
import argparse
from pathlib import Path
from typing import Any

import litserve as ls
import torch


class TaskAPI(ls.LitAPI):
    """One fine-tuned model: tokenise a batch of texts, run it, return each text's answer (label and score, or tags)."""

    def __init__(self, folder: Path, threads: int, **options: Any) -> None:
        super().__init__(**options)
        self.folder, self.threads = folder, threads
        self.kind = (folder / "kind.txt").read_text().strip()

    def setup(self, device: str) -> None:
        from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification, AutoTokenizer

        torch.set_num_threads(self.threads)
        cls = AutoModelForTokenClassification if self.kind == "tagging" else AutoModelForSequenceClassification
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.folder))
        self.model = cls.from_pretrained(str(self.folder), use_safetensors=True).eval().to(device)
        self.labels = self.model.config.id2label

    def decode_request(self, request: dict[str, Any]) -> str:
        return request["text"]

    def predict(self, texts: list[str]) -> list[Any]:
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
        with torch.inference_mode():
            logits = self.model(**batch).logits.softmax(-1)
        if self.kind == "tagging":
            best = logits.argmax(-1).tolist()
            return [
                [self.labels[i] for i, keep in zip(row, mask, strict=True) if keep]
                for row, mask in zip(best, batch["attention_mask"].tolist(), strict=True)
            ]
        score, best = logits.max(-1)
        return [{"label": self.labels[i], "score": s} for i, s in zip(best.tolist(), score.tolist(), strict=True)]

    def encode_response(self, output: Any) -> dict[str, Any]:
        return {"tags": output} if self.kind == "tagging" else output


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.litserve_peer", description=__doc__)
    parser.add_argument("--models", required=True, type=Path)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--batch-timeout", type=float, default=0.005)
    parser.add_argument("--threads", type=int, default=1, help="PyTorch threads per model's worker process")
    args = parser.parse_args(argv)
    apis = [
        TaskAPI(folder, args.threads, max_batch_size=args.max_batch_size, batch_timeout=args.batch_timeout, api_path=f"/{folder.name}")
        for folder in sorted(p for p in args.models.iterdir() if (p / "kind.txt").is_file())
    ]
    ls.LitServer(apis, accelerator="cpu", timeout=60).run(port=args.port, host="127.0.0.1", generate_client_file=False)


if __name__ == "__main__":
    main()
