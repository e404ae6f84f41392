"""The decoder engine: model, weights, tokenizers, KV memory, scheduler. Torch only, no asyncio."""
