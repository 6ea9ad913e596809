"""System facts and process settings: devices, CPU capabilities, advice from them, the allocator
and threads, the cache folder, sha256."""
