from .launch import (CPUCompatibleDDP, exit_cpu_distributed,
                     init_cpu_distributed)

__all__ = ['CPUCompatibleDDP', 'exit_cpu_distributed', 'init_cpu_distributed']
