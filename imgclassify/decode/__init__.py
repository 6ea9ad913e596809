"""Decoding: files or bytes to uint8 tensors (Pillow), batches from decode processes or threads,
workers that crash, GPU decoding, and which loader feeds the model."""
