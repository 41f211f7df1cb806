from rctlpolicy.cli import console_main

console_main()
