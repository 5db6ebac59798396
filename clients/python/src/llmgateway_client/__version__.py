__title__ = "llmgateway-client"
__version__ = "0.1.0"
