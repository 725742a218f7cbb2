#!/usr/bin/env python3
"""LlamaIndex peer baseline: CPU cost per 1,000 chunks of ingesting a folder.

SimpleDirectoryReader (default readers: PDF via pypdf, everything else - HTML,
Markdown, text - read as plain text) -> IngestionPipeline(SentenceSplitter(512, 64),
OpenAIEmbedding(text-embedding-3-small, embed_batch_size=128)) -> a local Qdrant
(QdrantClient(path=tmpdir)), or with --in-memory the default in-memory
VectorStoreIndex. Sequential: num_workers unset.

Prints one JSON line. CPU is getrusage(RUSAGE_SELF) + getrusage(RUSAGE_CHILDREN),
user+sys, for the whole process including the Python imports (also reported
apart). The embedding server (the provider emulator) is another process and is
not counted here.
"""
import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time


def cpu_now():
    s = resource.getrusage(resource.RUSAGE_SELF)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def peak_rss_mb():
    # ru_maxrss is in KiB on Linux.
    s = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    c = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(s, c) / 1024.0


def main():
    wall0 = time.perf_counter()
    loadavg_start = os.getloadavg()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("corpus", help="folder of files to ingest")
    ap.add_argument("--api-base", default=os.environ.get("EMBED_API_BASE"),
                    help="OpenAI-compatible base URL ending in /v1 (or $EMBED_API_BASE)")
    ap.add_argument("--in-memory", action="store_true",
                    help="default in-memory VectorStoreIndex instead of Qdrant local")
    ap.add_argument("--chunk-size", type=int, default=512)
    ap.add_argument("--chunk-overlap", type=int, default=64)
    ap.add_argument("--embed-batch-size", type=int, default=128)
    ap.add_argument("--count-tokens", action="store_true",
                    help="after the measurement, count cl100k tokens of the embedded texts")
    ap.add_argument("--label", default=None, help="free text copied into the JSON line")
    args = ap.parse_args()
    if not args.api_base:
        ap.error("--api-base (or EMBED_API_BASE) is required")

    from importlib.metadata import version

    from llama_index.core import SimpleDirectoryReader, VectorStoreIndex
    from llama_index.core.ingestion import IngestionPipeline
    from llama_index.core.node_parser import SentenceSplitter
    from llama_index.embeddings.openai import OpenAIEmbedding

    if not args.in_memory:
        from llama_index.vector_stores.qdrant import QdrantVectorStore
        from qdrant_client import QdrantClient
    cpu_imports = cpu_now()
    wall_imports = time.perf_counter() - wall0

    tmpdir = tempfile.mkdtemp(prefix="llamaindex-qdrant-")
    try:
        # 1. Read + extract.
        c0, w0 = cpu_now(), time.perf_counter()
        documents = SimpleDirectoryReader(args.corpus).load_data()
        cpu_read, wall_read = cpu_now() - c0, time.perf_counter() - w0

        # 2. Split + embed + store.
        c0, w0 = cpu_now(), time.perf_counter()
        embed_model = OpenAIEmbedding(
            model="text-embedding-3-small",
            api_base=args.api_base,
            api_key="x",
            embed_batch_size=args.embed_batch_size,
        )
        splitter = SentenceSplitter(chunk_size=args.chunk_size,
                                    chunk_overlap=args.chunk_overlap)
        if args.in_memory:
            pipeline = IngestionPipeline(transformations=[splitter, embed_model])
            nodes = pipeline.run(documents=documents)
            # Nodes already carry embeddings, so the index does not embed again.
            index = VectorStoreIndex(nodes=nodes, embed_model=embed_model)
            store = "in-memory VectorStoreIndex"
        else:
            client = QdrantClient(path=tmpdir)
            vector_store = QdrantVectorStore(client=client, collection_name="llamaindex_baseline")
            pipeline = IngestionPipeline(transformations=[splitter, embed_model],
                                         vector_store=vector_store)
            nodes = pipeline.run(documents=documents)
            store = "qdrant local (QdrantClient(path=tmpdir))"
        cpu_pipeline, wall_pipeline = cpu_now() - c0, time.perf_counter() - w0

        cpu_total = cpu_now()
        wall_total = time.perf_counter() - wall0
        rss = peak_rss_mb()

        # Checks, outside the measurement.
        embedded = sum(1 for n in nodes if n.embedding is not None)
        stored = None
        if args.in_memory:
            stored = len(index.index_struct.nodes_dict)
        else:
            stored = client.count("llamaindex_baseline", exact=True).count
            client.close()
        tokens = None
        if args.count_tokens:
            from llama_index.core.schema import MetadataMode
            from llama_index.core.utils import get_tokenizer
            tok = get_tokenizer()
            tokens = sum(len(tok(n.get_content(metadata_mode=MetadataMode.EMBED))) for n in nodes)

        chunks = len(nodes)
        out = {
            "tool": "llamaindex",
            "label": args.label,
            "corpus": os.path.abspath(args.corpus),
            "files": len(os.listdir(args.corpus)),
            "documents": len(documents),
            "chunks": chunks,
            "embedded": embedded,
            "stored": stored,
            "tokens_cl100k": tokens,
            "store": store,
            "cpu_secs": round(cpu_total, 3),
            "cpu_secs_per_1k_chunks": round(cpu_total / chunks * 1000, 3) if chunks else None,
            "cpu_secs_imports": round(cpu_imports, 3),
            "cpu_secs_read_extract": round(cpu_read, 3),
            "cpu_secs_split_embed_store": round(cpu_pipeline, 3),
            "cpu_secs_per_1k_chunks_excl_imports":
                round((cpu_total - cpu_imports) / chunks * 1000, 3) if chunks else None,
            "wall_secs": round(wall_total, 3),
            "wall_secs_imports": round(wall_imports, 3),
            "wall_secs_read_extract": round(wall_read, 3),
            "wall_secs_split_embed_store": round(wall_pipeline, 3),
            "peak_rss_mb": round(rss, 1),
            "chunk_size": args.chunk_size,
            "chunk_overlap": args.chunk_overlap,
            "embed_batch_size": args.embed_batch_size,
            "loadavg_1m_start": round(loadavg_start[0], 2),
            "loadavg_1m_end": round(os.getloadavg()[0], 2),
            "python": sys.version.split()[0],
            "versions": {p: version(p) for p in (
                "llama-index-core", "llama-index-readers-file", "llama-index-embeddings-openai",
                "llama-index-vector-stores-qdrant", "qdrant-client", "pypdf", "openai", "tiktoken")},
        }
        print(json.dumps(out), flush=True)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


if __name__ == "__main__":
    main()
