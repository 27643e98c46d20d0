"""Tokenizer workshop: train domain, binary and character tokenizers, compare them with
GPT-4o / GPT-4 / Llama-3 / Qwen3, and transplant a model onto a new tokenizer.

- `corpora`: the corpora every machine has (stdlib, site-packages, ELF files, licence texts).
- `train`: BPE (KL3M tokenizers), byte BPE (Binary BPE), character BPE, Supertokens (TokenAdapt).
- `handles`, `vocab`: one view of any tokenizer (tokenizer.json, quicktok's reference encodings),
  vocabularies as bytes, references converted to transformers tokenizers.
- `evaluate`: bytes/token, tokens/document, vocabulary utilisation, identifier fertility.
- `plan`, `omp`, `tokenadapt`, `transplant`: new embedding rows as combinations of old ones (OMP as
  in mergekit's tokensurgeon, TokenAdapt's hybrid, the baselines); `lm`: bits per byte, donor and
  recovery training.
- `cli`: `tokenforge tokenizer train | eval | transplant`.
"""
