from twisted.application.service import ServiceMaker

sipgw = ServiceMaker("sipgw", "sipgw.tap", "SIP calls as live streams (WCS-compatible)", "sipgw")
