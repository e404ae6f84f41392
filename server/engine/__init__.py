"""The decoder engine: model, weights, tokenizers, KV memory, scheduler, core. Torch only; no asyncio."""
