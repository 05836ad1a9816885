"""Security contracts shared by the processes: API keys and principals, the
callback (SSRF) policy, and the checks production runs before it starts."""
