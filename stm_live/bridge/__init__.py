"""Controller bridges: lines from a microscope controller into the daemon, decisions back out.

* :mod:`.nanonis`: the Nanonis TCP programming interface (protocol, client,
  typed commands, the line forwarder);
* :mod:`.geometry`: scan frames, image positions <-> controller coordinates;
* :mod:`.lines`: which lines of a grabbed buffer are new;
* :mod:`.drift`: drift between frames from their overlap;
* :mod:`.executor`: decisions -> controller commands, with the safety rules;
* :mod:`.service`: ``stm-live bridge nanonis``, everything wired together.

Nothing is imported here, so that the light modules stay light.
"""
