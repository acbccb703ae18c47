"""The serial provisioning console: ``edge console --port URL``.

:mod:`~edge.provision.console` is the sans-IO core (bytes in, bytes and events
out), :mod:`~edge.provision.provisioner` does what a command asks on the device
(configuration, keys, network, sound, reboot) and
:mod:`~edge.provision.serialport` joins them to a pyserial port on the event loop.
"""
