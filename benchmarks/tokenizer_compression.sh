#!/usr/bin/env bash
# Compression table of benchmarks/TOKENIZERS.md: trains the project's tokenizers (KL3M-style code
# BPE, with and without Supertokens, on the stdlib and on site-packages; Binary-BPE byte tokenizer
# on ELF files; KL3M-style BPE and character tokenizers on licence texts), then compares them with the
# demo's tokenizer, GPT-4o (o200k), GPT-4 (cl100k), Llama-3 and Qwen3 on held-out code, binaries
# and legal text.
#
#   bash benchmarks/tokenizer_compression.sh [OUT]     (default OUT=build/tokenizers)
#
# Every corpus is a held-out split (see tokenforge.tokenization.corpora); the tokenizers never saw
# those files. About 10 minutes on 2 CPU cores.
set -euo pipefail
OUT=${1:-build/tokenizers}
TF=tokenforge
mkdir -p "$OUT"

train() {  # name, then `tokenizer train` options
    local name=$1
    shift
    if [[ ! -f "$OUT/$name/tokenizer.json" ]]; then
        $TF tokenizer train --out "$OUT/$name" "$@"
    fi
}

train code-bpe-16k --kind bpe --vocab 16384 --corpus stdlib
train code-bpe-16k-super --kind bpe --vocab 16384 --corpus stdlib --supertokens
train code-bpe-32k --kind bpe --vocab 32768 --corpus stdlib
train site-bpe-8k --kind bpe --vocab 8192 --corpus site-packages --max-mb 24
train elf-byte-8k --kind byte --vocab 8192 --corpus elf --max-mb 24 --min-frequency 4
train legal-bpe-16k --kind bpe --vocab 16384 --corpus legal
train legal-char-4k --kind char --vocab 4096 --corpus legal --max-token-length 4

$TF tokenizer eval --out "$OUT/eval" --baseline o200k --max-mb 6 \
    --tokenizer o200k --tokenizer cl100k --tokenizer llama3 --tokenizer qwen3 \
    --tokenizer demo --tokenizer "$OUT/code-bpe-16k" --tokenizer "$OUT/code-bpe-16k-super" \
    --tokenizer "$OUT/code-bpe-32k" --tokenizer "$OUT/site-bpe-8k" --tokenizer "$OUT/elf-byte-8k" \
    --tokenizer "$OUT/legal-bpe-16k" --tokenizer "$OUT/legal-char-4k" \
    --corpus stdlib:heldout --corpus site-packages:heldout --corpus elf:heldout \
    --corpus legal:heldout
