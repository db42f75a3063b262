"""Adapters: the ID-LoRA and HydraLoRA layers, injection into a model (PEFT for LoRA / DoRA),
adapter files, parameter reports and budgets."""
